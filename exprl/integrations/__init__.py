"""exprl inside other training frameworks. Each integration is its own module behind its own extra
and is imported explicitly (`from exprl.integrations.trl import ExpRLGRPOTrainer`), so importing
exprl never imports a framework."""
