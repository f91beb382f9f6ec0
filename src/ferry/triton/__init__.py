"""`ferry triton sync`: a Triton model repository that follows a service's revisions."""
