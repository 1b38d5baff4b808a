"""Placeholder: being written (issue 4)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/checkpoints", tags=["checkpoints"])
