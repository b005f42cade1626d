"""Ways to look at results: SQL (query), an HTML report (report), the single-video page (serve)."""
