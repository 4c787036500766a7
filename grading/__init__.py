"""Course grading: the bilingual exam-prep question bank, glossary and quiz."""
