"""posts_service: posts; create-post, delete-post, and reads."""
