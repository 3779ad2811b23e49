-- Runs an Argo CD health script the way Argo CD does: the object as the
-- global `obj`, the script's returned table read as status and message.
-- Usage: lua5.4 argocd-health.lua SCRIPT < object.json
local json = require("dkjson")
local script = assert(loadfile(arg[1]))
local object, _, err = json.decode(io.read("a"))
assert(object, err)
obj = object
local hs = script()
io.write(hs.status, "\t", hs.message or "", "\n")
