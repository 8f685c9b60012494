"""editx: a fast runtime for Step-Audio-EditX (voice cloning and speech editing)."""
__version__ = "0.1.0"
