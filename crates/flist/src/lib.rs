//! Flists in the rfs "FL" format.
