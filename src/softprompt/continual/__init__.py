"""Learning tasks one after another without forgetting (``softprompt continual``)."""
