"""(being written)"""

HELP = "synthetic (being written)"


def add_arguments(parser):
    pass


def run(args):
    raise NotImplementedError
