-- GET /posts/{id}, over a set of existing posts in rotation. args[1]: a file of post ids.
local prepared = {}
local sent = 0

function init(args)
  for id in io.lines(args[1]) do
    table.insert(prepared, wrk.format("GET", "/posts/" .. id))
  end
end

function request()
  sent = sent + 1
  return prepared[(sent + index) % #prepared + 1]
end
