"""Course grading: the bilingual exam-prep question bank and quiz, and the labs' auto-grader.

Students call ``grading.check("part-id")`` in a lab to re-run that part's public checks.
"""


def check(part_id: str) -> None:
    """Run the public checks of the graded part ``part_id`` in the calling notebook's namespace."""
    import inspect

    from grading.public_checks import public_checks

    caller = inspect.currentframe().f_back
    exec(compile(public_checks(part_id), f"<public checks of {part_id}>", "exec"), caller.f_globals)
