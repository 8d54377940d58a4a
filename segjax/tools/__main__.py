"""`python -m segjax.tools <tool>` = the `segjax <tool>` command."""

from segjax import cli

if __name__ == '__main__':
  cli.main()
