"""Default chat templates of the model families (read by `dlm.families.Family.chat_template`)."""
