-- debian-apt.lua: apt-get update/install from Debian's mirrors (plain HTTP as apt uses
-- it by default, and HTTPS). Package integrity comes from apt's own signatures.
local readonly = { "GET", "HEAD" }
return {
  name = "debian-apt",
  allow = {
    { host = "deb.debian.org", methods = readonly },
    { host = "security.debian.org", methods = readonly },
    { host = "cdn-fastly.deb.debian.org", methods = readonly },
  },
}
