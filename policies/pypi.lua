-- pypi.lua: pip install from PyPI (index + files), read-only.
return {
  name = "pypi",
  allow = {
    { host = "pypi.org", methods = { "GET", "HEAD" }, path = "/simple/" },
    { host = "pypi.org", methods = { "GET", "HEAD" }, path = "/pypi/" },
    { host = "files.pythonhosted.org", methods = { "GET", "HEAD" }, path = "/packages/" },
  },
}
