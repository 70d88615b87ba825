"""The small layer every Sonalyze service shares: errors, the gateway upstream contract, serving, logging."""
