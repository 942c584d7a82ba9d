"""What every task shares: run lifecycle, batch contract, guardrails, data-file safety, logging."""
