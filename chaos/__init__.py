"""The fault campaign the project runs on itself (`make chaos`): see chaos/campaign.py."""
