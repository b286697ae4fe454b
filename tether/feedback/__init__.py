"""Judgment kinds and their validation; aggregation of votes into pairs (majority, Dawid-Skene, Bradley-Terry)."""
