"""Surgical visual question answering: instruction-tuned vision-language models, evaluated per question type."""
