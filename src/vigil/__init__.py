"""vigil: experiments for multimodal tasks, built around silent training bugs."""
