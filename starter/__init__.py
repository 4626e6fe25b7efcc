"""What other services import: the LoyaltyClient."""

from starter.client import LoyaltyClient

__all__ = ["LoyaltyClient"]
