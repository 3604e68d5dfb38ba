"""mkdocs hook: the repository's pages outside docs/ that the docs link to become pages of the site.

The docs are written to read on a repository host too, so they link to `../README.md`, `../benchmarks/RESULTS.md`
and `../recipes/README.md` by their place in the repository. The site publishes those files as `start.md`,
`results.md` and `recipes.md` (see `PUBLISHED`), and every link between pages is rewritten from its repository path
to its site path. A link to any
other file outside docs/ is left as it is, so that `mkdocs build --strict` reports it (write such a path in a code
span instead of linking it).
"""

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
# repository path -> path in the site (beside the pages of docs/)
PUBLISHED = {"README.md": "start.md", "benchmarks/RESULTS.md": "results.md", "recipes/README.md": "recipes.md"}
_LINK = re.compile(r"(\]\()([^)\s#]+\.md)(#[^)\s]*)?(\))")


def on_files(files, config):
    for repository_path, site_path in PUBLISHED.items():
        files.append(File.generated(config, site_path, abs_src_path=str(ROOT / repository_path)))
    return files


def _repository_path(page) -> str:
    for repository_path, site_path in PUBLISHED.items():
        if page.file.src_uri == site_path:
            return repository_path
    return f"docs/{page.file.src_uri}"


def _site_link(target: str, page_path: str) -> str:
    """`target` (a link written relative to the page's place in the repository), relative to the page in the site."""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_path), target))
    if resolved in PUBLISHED:
        resolved = f"docs/{PUBLISHED[resolved]}"
    if not resolved.startswith("docs/"):
        return target  # outside the site: left for the strict build to report
    site_dir = posixpath.dirname(page_path) if page_path.startswith("docs/") else "docs"
    return posixpath.relpath(resolved, site_dir)


def on_page_markdown(markdown, page, config, files):
    page_path = _repository_path(page)
    return _LINK.sub(lambda m: f"{m[1]}{_site_link(m[2], page_path)}{m[3] or ''}{m[4]}", markdown)
