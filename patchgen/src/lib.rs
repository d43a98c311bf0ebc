//! Journal edits, apply them to files, and export diffs and mbox patches.
