"""`edvit demo`: the whole site on one machine (`run`), its private broker (`brokers`) and
what it reports (`tally`). It starts the other parts as commands and imports none of them."""
