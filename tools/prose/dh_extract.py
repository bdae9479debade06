import os,re,sys,html
from html.parser import HTMLParser
base='/tmp/prose/dl/deb/dh/usr/share/doc/debian-handbook/html/'
class P(HTMLParser):
    def __init__(s):
        super().__init__(); s.paras=[]; s.depth_p=0; s.buf=[]; s.skip=0
    def handle_starttag(s,t,a):
        cls=dict(a).get('class','') or ''
        if t in('pre','script','style') or 'programlisting' in cls or 'screen' in cls: s.skip+=1
        if t=='div' and s.depth_p: s.divd+=1
        if (t=='div' and 'para' in cls.split() and not s.depth_p) or (t=='p' and not s.depth_p): s.depth_p=1; s.divd=0; s.tag=t; s.buf=[]
        if t in('li','br') and s.depth_p: s.buf.append(' ')
    def handle_endtag(s,t):
        if t in('pre','script','style') and s.skip: s.skip-=1
        if t=='div' and s.depth_p and s.tag=='div' and s.divd>0: s.divd-=1; return
        if t==getattr(s,'tag',None) and s.depth_p:
            s.depth_p=0
            txt=re.sub(r'\s+',' ',''.join(s.buf)).strip()
            if txt: s.paras.append(txt)
    def handle_data(s,d):
        if s.depth_p and not s.skip: s.buf.append(d)
        elif s.depth_p and s.skip: s.buf.append(' ')
def paras(lang):
    d=base+lang; out=[]
    for f in sorted(os.listdir(d)):
        if not f.endswith('.html'): continue
        if f in('index.html','pr01.html') and False: pass
        p=P(); p.feed(open(os.path.join(d,f),encoding='utf-8').read()); out+=p.paras
    return out
en=paras('en-US'); enset=set(en)
m={'cs':'cs-CZ','da':'da-DK','de':'de-DE','en':'en-US','es':'es-ES','fa':'fa-IR','fr':'fr-FR','it':'it-IT','ja':'ja-JP','ko':'ko-KR','no':'nb-NO','nl':'nl-NL','pl':'pl-PL','pt':'pt-BR','ru':'ru-RU','sv':'sv-SE','vi':'vi-VN','zh':'zh-CN'}
for k,v in m.items():
    ps=paras(v); seen=set(); keep=[]
    for x in ps:
        if len(x)<40: continue
        if k!='en' and x in enset: continue
        # drop legal/boilerplate
        if re.search(r'GNU General Public License|Creative Commons|Legal Notice',x): continue
        if x in seen: continue
        seen.add(x); keep.append(x)
    os.makedirs('/tmp/prose/'+k,exist_ok=True)
    open(f'/tmp/prose/{k}/debian_handbook_11.txt','w',encoding='utf-8').write('\n'.join(keep)+'\n')
    print(k,len(ps),len(keep),sum(len(x.encode()) for x in keep))
