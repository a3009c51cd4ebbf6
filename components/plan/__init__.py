"""``pgha plan``: what a change of the stack's config does, offline (members replaced and in what
order, what applies in place, switchovers and write pauses, what AWS would refuse, monthly cost),
and the summary of ``pulumi preview --json`` that the PR comment leads with."""
