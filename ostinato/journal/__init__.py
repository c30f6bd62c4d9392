"""The journal: events committed in order, kept until their receiver releases them."""
