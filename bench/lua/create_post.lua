-- Authorized POST /posts, the callers in rotation: every request writes a new post.
-- args[1]: a file of access tokens, one a line.
local prepared = {}
local sent = 0

function init(args)
  for token in io.lines(args[1]) do
    table.insert(prepared, wrk.format("POST", "/posts", {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/json",
    }, '{"title": "Benchmark post", "body": "Written by wrk"}'))
  end
end

function request()
  sent = sent + 1
  return prepared[(sent + index) % #prepared + 1]
end
