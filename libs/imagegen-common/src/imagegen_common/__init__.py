"""Code shared by imagegen's services."""
