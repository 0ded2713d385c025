-- deny-all.lua: no egress at all. Every request is refused (403 default-deny) and
-- audited; useful as the base of a policy that adds nothing, and as a kill switch:
-- copy it over a running sandbox's policy file and the next request is refused.
return {
  name = "deny-all",
  on_request = function(req)
    return req:deny(403, "this sandbox has no network access")
  end,
}
