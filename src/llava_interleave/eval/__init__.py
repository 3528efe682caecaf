"""LLaVA-Interleave Bench evaluation: read a bench (`bench`), answer it (`runner`), score it under the paper's
or the harness's protocol (`metrics`, `scoring`) and write a report (`report`)."""
