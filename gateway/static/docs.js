// The API reference page (/docs): lists every operation of /openapi.json. A file rather than an
// inline <script>, so the page runs under the gateway's Content-Security-Policy (script-src 'self').
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const root = document.getElementById('ops');
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const section = document.createElement('section');
      const h = document.createElement('h2');
      h.textContent = method.toUpperCase() + ' ' + path;
      const p = document.createElement('p');
      // A public operation says so with an empty list (`security: []`), which is truthy.
      p.textContent = op.summary + (op.security && op.security.length ? ' (Bearer token)' : '');
      const ul = document.createElement('ul');
      for (const [code, r] of Object.entries(op.responses)) {
        const li = document.createElement('li'); li.textContent = code + ': ' + r.description; ul.appendChild(li);
      }
      section.append(h, p, ul); root.appendChild(section);
    }
  }
});
