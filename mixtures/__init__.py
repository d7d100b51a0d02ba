"""SeqIO Task / Mixture registrations. Import a module here to register its tasks."""
