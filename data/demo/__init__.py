"""Generated multilingual demo corpus (scenes, captions in six languages, paired captions with alignments,
VQA in en/ja) that keeps UC2's data structure and is learnable by a tiny model on a CPU.

Modules: ``lexicon`` (word tables), ``scene`` (scenes and fake detector output), ``grammar`` (captions and
alignments), ``vqa`` (questions and noisy answers), ``raw`` (raw files), ``stats`` (statistics table).
The databases are built by ``scripts/make_demo_data.py`` through the project's preprocessing tools.
"""
