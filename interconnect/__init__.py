"""The secure path engine, its GUI, the relays and the federation PKI."""
