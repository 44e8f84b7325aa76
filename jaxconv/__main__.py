from jaxconv.cli import entry

entry()
