"""The request path: route (DataPlane, RouteTable, canaries, shadows), admit and drain, run the stages."""
