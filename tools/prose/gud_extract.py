import os,re,sys
import xml.etree.ElementTree as ET
base='/tmp/prose/dl/deb/gud/usr/share/help/'
def paras(l):
    out=[]
    d=base+l+'/gnome-help'
    for f in sorted(os.listdir(d)):
        if not f.endswith('.page'): continue
        try: root=ET.parse(os.path.join(d,f)).getroot()
        except Exception as e: continue
        for el in root.iter():
            tag=el.tag.split('}')[-1]
            if tag=='p':
                # skip p inside info/credit/license/code
                x=re.sub(r'\s+',' ',''.join(el.itertext())).strip()
                if x: out.append(x)
    return out
def infoish(l):
    # collect texts in <info> blocks (credits, license) to drop
    s=set(); d=base+l+'/gnome-help'
    for f in os.listdir(d):
        if not f.endswith('.page'): continue
        try: root=ET.parse(os.path.join(d,f)).getroot()
        except: continue
        for info in root.iter():
            if info.tag.split('}')[-1] in('info','license','credit','code','screen'):
                for el in info.iter():
                    if el.tag.split('}')[-1]=='p': s.add(re.sub(r'\s+',' ',''.join(el.itertext())).strip())
    return s
en=set(paras('C'))
for k,l in [a.split('=') for a in sys.argv[1:]]:
    ps=paras(l); bad=infoish(l); seen=set(); keep=[]
    for x in ps:
        if len(x)<30 or x in en or x in bad or x in seen: continue
        if re.search(r'Creative Commons|CC-BY-SA',x): continue
        seen.add(x); keep.append(x)
    os.makedirs('/tmp/prose/'+k,exist_ok=True)
    fn=f'/tmp/prose/{k}/gnome_user_docs_43_{l.replace("@","-")}.txt'
    open(fn,'w',encoding='utf-8').write('\n'.join(keep)+'\n')
    print(k,l,len(ps),len(keep),sum(len(x.encode()) for x in keep),flush=True)
