"""The demo network: the hospital trust's gateway and the municipalities' shared gateway on
127.0.0.1, with simulated local systems playing real PLO and GP traffic."""
