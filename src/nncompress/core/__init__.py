"""Core: the Step base class, its registry, recipes and the compress() driver."""
