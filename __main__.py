"""The pgha Pulumi program: read the ``pgha:`` config, validate it, declare the stack."""

import pulumi
from pulumi.runtime.config import CONFIG

import pgha.stacks
from pgha.spec.stackfile import pgha_values

pgha.stacks.deploy(pgha_values(CONFIG.get()), stack=pulumi.get_stack())
