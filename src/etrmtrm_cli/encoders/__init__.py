"""Encoders that read a puzzle's demonstration pairs. Importing this package registers the in-tree ones."""

from etrmtrm_cli.encoders import recurrent_standard, static, trm_style
from etrmtrm_cli.encoders.registry import build_encoder, get_encoder, list_encoders

__all__ = ["build_encoder", "get_encoder", "list_encoders", "recurrent_standard", "static", "trm_style"]
