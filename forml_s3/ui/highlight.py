"""A small Python highlighter for application descriptors: the standard tokenizer, every token escaped.

No third-party highlighter is a dependency of forml-s3, and a descriptor is a short module: keywords, names,
strings, numbers, comments and operators are enough. Source that does not tokenize (not Python, or cut short)
is shown escaped and plain.
"""

import io
import keyword
import tokenize

import markupsafe

CLASSES = {
    tokenize.COMMENT: 'c',
    tokenize.STRING: 's',
    tokenize.NUMBER: 'n',
    tokenize.OP: 'o',
}


def python(source: str) -> markupsafe.Markup:
    """The source as HTML: each token escaped, wrapped in a ``span`` with a class by its kind."""
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    row, col = 1, 0

    def advance(to_row: int, to_col: int) -> None:
        """Copy the source between the last token and ``(to_row, to_col)`` (whitespace, continuations)."""
        nonlocal row, col
        while row < to_row:
            out.append(str(markupsafe.escape(lines[row - 1][col:])))
            row, col = row + 1, 0
        if row <= len(lines):
            out.append(str(markupsafe.escape(lines[row - 1][col:to_col])))
        col = to_col

    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.ENDMARKER:
                break
            advance(*token.start)
            text = token.string
            kind = CLASSES.get(token.type)
            if token.type == tokenize.NAME and (keyword.iskeyword(text) or keyword.issoftkeyword(text)):
                kind = 'k'
            escaped = str(markupsafe.escape(text))
            out.append(f'<span class="{kind}">{escaped}</span>' if kind and text else escaped)
            row, col = token.end
        advance(len(lines) + 1, 0)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return markupsafe.Markup(markupsafe.escape(source))
    return markupsafe.Markup(''.join(out))
