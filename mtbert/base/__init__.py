"""The ground floor: errors, paths and files, atomic writes, deterministic safetensors, signals,
processes. Imports nothing of mtbert's."""
