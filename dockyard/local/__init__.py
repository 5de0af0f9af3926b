"""The all-in-one local cluster behind `dockyard up`: a controller and an agent under one supervisor."""
