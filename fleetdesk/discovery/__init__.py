"""Finding devices: mDNS browsing, manual add, and a bounded SSH sweep of an operator-typed CIDR."""
