"""Test helpers: scripted fake sources and a Playwright browser on Debian's chromium. May import kit.pipeline."""
