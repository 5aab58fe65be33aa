// komut operator UI: live updates by server-sent events. Every page works without this script;
// it only keeps the log and the message page current while they are open.
"use strict";

(function () {
  const liveBadge = document.getElementById("live");

  function setLive(on) {
    if (!liveBadge) return;
    liveBadge.hidden = false;
    liveBadge.classList.toggle("off", !on);
    liveBadge.textContent = on ? "live" : "reconnecting";
  }

  function connect(url, after, onMessage) {
    const target = new URL(url, window.location.href);
    if (after) target.searchParams.set("after", after);
    const source = new EventSource(target.toString());
    source.addEventListener("ready", () => setLive(true));
    source.addEventListener("message", (ev) => onMessage(JSON.parse(ev.data)));
    source.addEventListener("reset", () => { source.close(); window.location.reload(); });
    source.onerror = () => setLive(false);
    window.addEventListener("pagehide", () => source.close());
    return source;
  }

  function statusSpan(span, status, small) {
    const changed = span.textContent && span.textContent !== status;
    span.className = "st st-" + status + (small ? " small" : "") + (changed ? " changed" : "");
    span.textContent = status;
  }

  function partyCell(link, herSpan, her, name) {
    if (her) {
      link.href = "/ui/partners/" + her;
      link.textContent = name || String(her);
      herSpan.textContent = String(her);
    } else {
      link.removeAttribute("href");
      link.textContent = name || "—";
    }
  }

  // --- the delivery log ---------------------------------------------------------------------

  function buildRow(template, r) {
    const tr = template.content.firstElementChild.cloneNode(true);
    const f = (name) => tr.querySelector('[data-f="' + name + '"]');
    tr.dataset.id = r.id;
    if (r.attention && !r.handled) tr.classList.add("attention");
    f("time").textContent = r.time;
    f("time").href = "/ui/messages/" + r.id;
    f("dir").textContent = r.direction === "inbound" ? "in" : "out";
    f("type").textContent = r.type_text || r.msg_type || "(unreadable)";
    f("type").href = "/ui/messages/" + r.id;
    f("type").title = r.msg_type;
    partyCell(f("sender"), f("sender_her"), r.sender_her, r.sender_name);
    partyCell(f("receiver"), f("receiver_her"), r.receiver_her, r.receiver_name);
    statusSpan(tr.querySelector("[data-status]"), r.status, false);
    f("reason").textContent = r.reason || "";
    const receivers = f("receivers");
    for (const d of r.deliveries) {
      const span = document.createElement("span");
      span.className = "st st-" + d.state + " small";
      span.title = (d.receiver_name || "") + " (" + d.receiver_her + ", " + d.role + "): " + d.state;
      span.textContent = String(d.receiver_her);
      receivers.append(span, " ");
    }
    return tr;
  }

  const log = document.getElementById("log");
  if (log && log.dataset.stream) {
    const template = document.getElementById("row-template");
    const body = log.tBodies[0];
    const firstPage = log.dataset.firstPage === "yes";
    const limit = parseInt(log.dataset.limit, 10) || 50;
    connect(log.dataset.stream, log.dataset.after, (data) => {
      const r = data.row;
      const old = body.querySelector('tr[data-id="' + r.id + '"]');
      const fresh = buildRow(template, r);
      fresh.classList.add("fresh");
      if (old) {
        // Shown already: it keeps its place with its new state, even if it left the filter.
        if (!data.matches) fresh.classList.add("outside");
        old.replaceWith(fresh);
        return;
      }
      const top = body.querySelector("tr[data-id]");
      if (!data.matches || !firstPage || (top && parseInt(top.dataset.id, 10) > r.id)) return;
      body.insertBefore(fresh, body.firstChild);
      while (body.rows.length > limit) body.deleteRow(body.rows.length - 1);
      const empty = document.querySelector("p.empty");
      if (empty) empty.remove();
    });
  }

  // --- one message ----------------------------------------------------------------------------

  const message = document.getElementById("message");
  if (message && message.dataset.stream) {
    const timeline = document.querySelector("table.timeline tbody");
    connect(message.dataset.stream, message.dataset.after, (data) => {
      const r = data.row;
      const overall = message.querySelector(".overall [data-status]");
      if (overall) statusSpan(overall, r.status, false);
      for (const d of r.deliveries) {
        const tr = document.querySelector('tr[data-delivery-id="' + d.id + '"]');
        if (!tr) continue;
        const span = tr.querySelector("[data-status]");
        const before = span.textContent;
        statusSpan(span, d.state, false);
        tr.querySelector("[data-attempts]").textContent = d.attempts;
        tr.querySelector("[data-error]").textContent = d.last_error || "";
        const apprec = tr.querySelector("[data-apprec]");
        if (d.apprec_status) apprec.textContent = d.apprec_status + " " + d.apprec_status_text;
        const help = tr.querySelector("[data-help]");
        if (before !== d.state) {
          if (help) help.textContent = "";
          const actions = tr.querySelector("td.actions");
          if (actions && !actions.querySelector(".stale")) {
            const note = document.createElement("a");
            note.className = "stale";
            note.href = window.location.pathname;
            note.textContent = "state changed: reload for actions";
            actions.prepend(note);
          }
        }
      }
      if (!timeline) return;
      for (const e of data.events) {
        if (timeline.querySelector('tr[data-event-id="' + e.id + '"]')) continue;
        const tr = document.createElement("tr");
        tr.dataset.eventId = e.id;
        tr.className = "fresh";
        const cells = [e.time, e.actor + (e.user ? " " + e.user : ""), e.kind, e.receiver_her || "", "", e.reason];
        cells.forEach((text, i) => {
          const td = document.createElement("td");
          if (i === 4 && e.to_state) {
            td.append((e.from_state || "∅") + " → ");
            const span = document.createElement("span");
            statusSpan(span, e.to_state, true);
            td.append(span);
          } else {
            td.textContent = text;
          }
          if (i === 0) td.className = "time";
          if (i === 5) td.className = "detail";
          tr.append(td);
        });
        timeline.append(tr);
      }
    });
  }
})();
