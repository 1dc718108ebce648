"""The web gallery: each user's finished results, behind signed expiring links (``links``), served by ``web``."""
