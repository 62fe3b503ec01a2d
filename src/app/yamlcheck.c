/* yamlcheck.c: decides, with libyaml (the parser PETSc itself uses), whether a YAML options text
 * is one PETSc's options reader takes, before PETSc sees it. PETSc 3.18's reader answers a
 * syntax error with a page of traceback and leaks its parser, and recurses without end on a
 * merge cycle (`a: &x {<<: *x}`), overflowing the stack. Here the text is walked with PETSc's
 * rules (a mapping of scalar keys to scalars, sequences or mappings; "<<" merges mappings; "$$"
 * keys are PETSc's own) and anything else gets one line naming the file, the line and what was
 * expected. Stricter than PETSc where its own handling is unsafe: nesting deeper than
 * CF_YAML_DEPTH, keys that cannot be option names, "!include". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "app/app.h"

enum { CF_YAML_DEPTH = 20, CF_YAML_KEY = 200, CF_YAML_DOCS = 16, CF_YAML_VISITS = 100000 };

struct walk {
  yaml_document_t *doc;
  const char *file;
  long visits; /* mappings walked: merges of merges can expand exponentially */
};

static cf_status bad(const struct walk *w, const yaml_node_t *n, const char *what) {
  return cf_err(CF_EINVAL,
                "cannot load options file '%s': line %zu: %s (expected a mapping of option names "
                "to values, e.g. 'train: {lr: 1e-3}')",
                w->file, (size_t)n->start_mark.line + 1, what);
}

static int alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* A key starts with a letter, and "-key_" must not read as a number followed by anything but
 * '_', a letter or a digit: PETSc refuses such an option prefix ("nan x", "inf-": strtod takes
 * "-nan", "-inf") half-way through loading (PetscOptionsPrefixPush), leaking its parser. */
static int key_ok(const char *k) {
  const size_t n = strlen(k);
  if (!((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= 'A' && k[0] <= 'Z')) || n > CF_YAML_KEY) return 0;
  char buf[CF_YAML_KEY + 3], *end;
  buf[0] = '-';
  memcpy(buf + 1, k, n);
  buf[n + 1] = '_';
  buf[n + 2] = '\0';
  (void)strtod(buf, &end);
  return end == buf || *end == '_' || alnum(*end);
}

static cf_status layer(struct walk *w, yaml_node_t *node, int depth);

/* A value under an option key: a scalar, a mapping (an option prefix), or a sequence of scalars
 * and one-pair mappings. */
static cf_status value(struct walk *w, yaml_node_t *v, int depth) {
  if (v->type == YAML_SCALAR_NODE) return CF_OK;
  if (v->type == YAML_MAPPING_NODE) return layer(w, v, depth + 1);
  if (v->type != YAML_SEQUENCE_NODE) return bad(w, v, "a value of an unknown kind");
  for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
    yaml_node_t *m = yaml_document_get_node(w->doc, *it);
    if (m == NULL) return bad(w, v, "a damaged sequence");
    if (m->type == YAML_SCALAR_NODE) continue;
    if (m->type != YAML_MAPPING_NODE) return bad(w, m, "a sequence inside a sequence");
    yaml_node_pair_t *p0 = m->data.mapping.pairs.start, *p1 = m->data.mapping.pairs.top;
    if (p1 - p0 > 1) return bad(w, m, "a mapping of more than one pair inside a sequence");
    if (p1 - p0 == 1) {
      yaml_node_t *k = yaml_document_get_node(w->doc, p0->key);
      if (k == NULL || k->type != YAML_SCALAR_NODE ||
          strcmp((char *)k->data.scalar.value, "<<") == 0)
        return bad(w, m, "a merge or a non-scalar key inside a sequence");
      if (strncmp((char *)k->data.scalar.value, "$$", 2) == 0) continue;
    }
    CF_TRY(layer(w, m, depth + 1));
  }
  return CF_OK;
}

/* One mapping level: option names (or "<<" merges, or PETSc's "$$" keys) to values. */
static cf_status layer(struct walk *w, yaml_node_t *node, int depth) {
  if (depth > CF_YAML_DEPTH)
    return bad(w, node, "options nested deeper than 20 levels (or a merge cycle)");
  if (++w->visits > CF_YAML_VISITS)
    return bad(w, node, "merges ('<<') that expand to more than 100000 mappings");
  if (node->type == YAML_SCALAR_NODE && node->data.scalar.value[0] == '\0') return CF_OK;
  if (node->type != YAML_MAPPING_NODE) return bad(w, node, "not a mapping");
  for (yaml_node_pair_t *pr = node->data.mapping.pairs.start; pr < node->data.mapping.pairs.top;
       pr++) {
    yaml_node_t *k = yaml_document_get_node(w->doc, pr->key),
                *v = yaml_document_get_node(w->doc, pr->value);
    if (k == NULL || v == NULL) return bad(w, node, "a damaged mapping");
    if (k->type != YAML_SCALAR_NODE) return bad(w, k, "a key that is not a plain name");
    const char *key = (const char *)k->data.scalar.value;
    if (strcmp(key, "<<") == 0) {
      if (v->type == YAML_MAPPING_NODE) {
        CF_TRY(layer(w, v, depth + 1));
      } else if (v->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
             it++) {
          yaml_node_t *m = yaml_document_get_node(w->doc, *it);
          if (m == NULL || m->type != YAML_MAPPING_NODE)
            return bad(w, v, "a merge ('<<') of something other than mappings");
          CF_TRY(layer(w, m, depth + 1));
        }
      } else {
        return bad(w, v, "a merge ('<<') of something other than mappings");
      }
      continue;
    }
    if (strncmp(key, "$$", 2) == 0) { /* PETSc's own keys: an anchor to merge, or !include */
      if (v->tag && strstr((const char *)v->tag, "!include"))
        return bad(w, v, "'!include' (not supported: put the options in one file)");
      if (v->type == YAML_SCALAR_NODE) continue;
      int flat = v->type == YAML_SEQUENCE_NODE;
      for (yaml_node_item_t *it = flat ? v->data.sequence.items.start : NULL;
           flat && it < v->data.sequence.items.top; it++) {
        yaml_node_t *m = yaml_document_get_node(w->doc, *it);
        flat = m != NULL && m->type == YAML_SCALAR_NODE;
      }
      if (!flat) /* PETSc 3.18 takes "$$name_" as an option prefix and fails */
        return bad(w, v, "a '$$' key with a mapping under it (define anchors under a named key)");
      continue;
    }
    if (!key_ok(key)) {
      char what[80];
      snprintf(what, sizeof what, "key '%.40s%s' is not an option name", key,
               strlen(key) > 40 ? "..." : "");
      return bad(w, k, what);
    }
    CF_TRY(value(w, v, depth));
  }
  return CF_OK;
}

cf_status cf_opts_yaml_check(const char *text, size_t n, const char *file) {
  CF_CHECK(memchr(text, '\0', n) == NULL, CF_EINVAL,
           "cannot load options file '%s': it holds a NUL byte, expected YAML text", file);
  yaml_parser_t p;
  CF_CHECK(yaml_parser_initialize(&p), CF_ENOMEM, "cannot load options file '%s': out of memory",
           file);
  yaml_parser_set_input_string(&p, (const unsigned char *)text, n);
  cf_status st = CF_OK;
  for (int docs = 0; st == CF_OK; docs++) { /* every document of the stream, as PETSc reads them */
    yaml_document_t doc;
    if (!yaml_parser_load(&p, &doc)) {
      st = cf_err(CF_EINVAL, "cannot load options file '%s': line %zu: not valid YAML (%s)", file,
                  (size_t)p.problem_mark.line + 1, p.problem ? p.problem : "no detail");
      break;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    struct walk w = {&doc, file, 0};
    if (root != NULL && docs >= CF_YAML_DOCS)
      st = bad(&w, root, "more than 16 YAML documents");
    else if (root != NULL)
      st = layer(&w, root, 0);
    yaml_document_delete(&doc);
    if (root == NULL) break;
  }
  yaml_parser_delete(&p);
  return st;
}
