"""users_service: public user profiles, and `ban-user` for admins."""
